// See silo_probe.h: libudev and libblkid opened with dlopen when first used.
#include "silo_probe.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

static char load_error[512];

struct symbol {
    void **slot;
    const char *name;
};

// Opens `library` and fills each slot; the table is usable only if every symbol was found.
static int load(const char *library, const struct symbol *symbols, size_t count) {
    void *handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *reason = dlerror();
        snprintf(load_error, sizeof load_error, "cannot load %s: %s", library, reason ? reason : "unknown error");
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        *symbols[i].slot = dlsym(handle, symbols[i].name);
        if (!*symbols[i].slot) {
            snprintf(load_error, sizeof load_error, "%s has no function %s", library, symbols[i].name);
            dlclose(handle);
            return -1;
        }
    }
    return 0;  // the handle stays open for the life of the process
}

#define SLOT(table, field, symbol) { (void **)&(table).field, #symbol }

static struct silo_udev_api udev_api;
static int udev_loaded = -1;
static pthread_once_t udev_once = PTHREAD_ONCE_INIT;

static void load_udev(void) {
    const struct symbol symbols[] = {
        SLOT(udev_api, new_context, udev_new),
        SLOT(udev_api, unref, udev_unref),
        SLOT(udev_api, device_new_from_subsystem_sysname, udev_device_new_from_subsystem_sysname),
        SLOT(udev_api, device_unref, udev_device_unref),
        SLOT(udev_api, device_get_property_value, udev_device_get_property_value),
    };
    udev_loaded = load("libudev.so.1", symbols, sizeof symbols / sizeof symbols[0]);
}

const struct silo_udev_api *silo_udev(void) {
    pthread_once(&udev_once, load_udev);
    return udev_loaded == 0 ? &udev_api : NULL;
}

static struct silo_blkid_api blkid_api;
static int blkid_loaded = -1;
static pthread_once_t blkid_once = PTHREAD_ONCE_INIT;

static void load_blkid(void) {
    const struct symbol symbols[] = {
        SLOT(blkid_api, new_probe, blkid_new_probe),
        SLOT(blkid_api, free_probe, blkid_free_probe),
        SLOT(blkid_api, probe_set_device, blkid_probe_set_device),
        SLOT(blkid_api, probe_set_sectorsize, blkid_probe_set_sectorsize),
        SLOT(blkid_api, probe_enable_superblocks, blkid_probe_enable_superblocks),
        SLOT(blkid_api, probe_set_superblocks_flags, blkid_probe_set_superblocks_flags),
        SLOT(blkid_api, probe_enable_partitions, blkid_probe_enable_partitions),
        SLOT(blkid_api, probe_set_partitions_flags, blkid_probe_set_partitions_flags),
        SLOT(blkid_api, do_safeprobe, blkid_do_safeprobe),
        SLOT(blkid_api, probe_lookup_value, blkid_probe_lookup_value),
        SLOT(blkid_api, probe_get_partitions, blkid_probe_get_partitions),
        SLOT(blkid_api, partlist_get_table, blkid_partlist_get_table),
        SLOT(blkid_api, parttable_get_type, blkid_parttable_get_type),
        SLOT(blkid_api, partlist_numof_partitions, blkid_partlist_numof_partitions),
        SLOT(blkid_api, partlist_get_partition, blkid_partlist_get_partition),
        SLOT(blkid_api, partition_get_partno, blkid_partition_get_partno),
        SLOT(blkid_api, partition_get_start, blkid_partition_get_start),
        SLOT(blkid_api, partition_get_size, blkid_partition_get_size),
        SLOT(blkid_api, partition_get_type_string, blkid_partition_get_type_string),
        SLOT(blkid_api, partition_get_type, blkid_partition_get_type),
        SLOT(blkid_api, partition_get_uuid, blkid_partition_get_uuid),
        SLOT(blkid_api, partition_get_name, blkid_partition_get_name),
        SLOT(blkid_api, partition_is_extended, blkid_partition_is_extended),
    };
    blkid_loaded = load("libblkid.so.1", symbols, sizeof symbols / sizeof symbols[0]);
}

const struct silo_blkid_api *silo_blkid(void) {
    pthread_once(&blkid_once, load_blkid);
    return blkid_loaded == 0 ? &blkid_api : NULL;
}

const char *silo_probe_error(void) {
    return load_error;
}
