/// Silo's version, as `silo --version` prints it. Bumped by hand with each release: the package
/// has no release tags yet, so this is the first.
public let siloVersion = "0.1.0"
