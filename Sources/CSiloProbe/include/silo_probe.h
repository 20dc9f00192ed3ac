// libudev and libblkid, bound when first used instead of when silo starts.
//
// Linked the usual way, both libraries (and what they need) are loaded and relocated at every
// start of every program linking SiloStorage: 0.36M instructions and 0.2 ms of each `silo run`,
// `process create` or `lun delete` here, none of which probes a device. Here they are opened with
// dlopen the first time a drive is enumerated or a device probed, and reached through a table of
// the few functions Silo calls. The headers are the libraries' own (libudev-dev, libblkid-dev).
#ifndef SILO_PROBE_H
#define SILO_PROBE_H

#include <libudev.h>
#include <blkid/blkid.h>

struct silo_udev_api {
    struct udev *_Nullable (*_Nonnull new_context)(void);
    struct udev *_Nullable (*_Nonnull unref)(struct udev *_Nullable udev);
    struct udev_device *_Nullable (*_Nonnull device_new_from_subsystem_sysname)(
        struct udev *_Nonnull udev, const char *_Nonnull subsystem, const char *_Nonnull sysname);
    struct udev_device *_Nullable (*_Nonnull device_unref)(struct udev_device *_Nullable device);
    const char *_Nullable (*_Nonnull device_get_property_value)(struct udev_device *_Nonnull device, const char *_Nonnull key);
};

struct silo_blkid_api {
    blkid_probe _Nullable (*_Nonnull new_probe)(void);
    void (*_Nonnull free_probe)(blkid_probe _Nonnull probe);
    int (*_Nonnull probe_set_device)(blkid_probe _Nonnull probe, int fd, blkid_loff_t offset, blkid_loff_t size);
    int (*_Nonnull probe_set_sectorsize)(blkid_probe _Nonnull probe, unsigned int size);
    int (*_Nonnull probe_enable_superblocks)(blkid_probe _Nonnull probe, int enable);
    int (*_Nonnull probe_set_superblocks_flags)(blkid_probe _Nonnull probe, int flags);
    int (*_Nonnull probe_enable_partitions)(blkid_probe _Nonnull probe, int enable);
    int (*_Nonnull probe_set_partitions_flags)(blkid_probe _Nonnull probe, int flags);
    int (*_Nonnull do_safeprobe)(blkid_probe _Nonnull probe);
    int (*_Nonnull probe_lookup_value)(blkid_probe _Nonnull probe, const char *_Nonnull name,
                                       const char *_Nullable *_Nullable data, size_t *_Nullable length);
    blkid_partlist _Nullable (*_Nonnull probe_get_partitions)(blkid_probe _Nonnull probe);
    blkid_parttable _Nullable (*_Nonnull partlist_get_table)(blkid_partlist _Nonnull list);
    const char *_Nullable (*_Nonnull parttable_get_type)(blkid_parttable _Nonnull table);
    int (*_Nonnull partlist_numof_partitions)(blkid_partlist _Nonnull list);
    blkid_partition _Nullable (*_Nonnull partlist_get_partition)(blkid_partlist _Nonnull list, int index);
    int (*_Nonnull partition_get_partno)(blkid_partition _Nonnull partition);
    blkid_loff_t (*_Nonnull partition_get_start)(blkid_partition _Nonnull partition);
    blkid_loff_t (*_Nonnull partition_get_size)(blkid_partition _Nonnull partition);
    const char *_Nullable (*_Nonnull partition_get_type_string)(blkid_partition _Nonnull partition);
    int (*_Nonnull partition_get_type)(blkid_partition _Nonnull partition);
    const char *_Nullable (*_Nonnull partition_get_uuid)(blkid_partition _Nonnull partition);
    const char *_Nullable (*_Nonnull partition_get_name)(blkid_partition _Nonnull partition);
    int (*_Nonnull partition_is_extended)(blkid_partition _Nonnull partition);
};

/// libudev.so.1's functions, loaded on the first call (thread-safe); NULL when the library or one
/// of the functions cannot be loaded, with the reason in silo_probe_error().
const struct silo_udev_api *_Nullable silo_udev(void);

/// libblkid.so.1's functions, the same way.
const struct silo_blkid_api *_Nullable silo_blkid(void);

/// Why the last silo_udev() or silo_blkid() that failed failed ("" when none did).
const char *_Nonnull silo_probe_error(void);

#endif
