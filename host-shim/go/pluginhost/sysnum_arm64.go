package pluginhost

// sysMemfdCreate is memfd_create(2), which Go 1.19's syscall package does not name.
const sysMemfdCreate = 279
