//go:build !amd64 && !arm64

package pluginhost

// sysMemfdCreate is unknown here: pinned plugins cannot be started (unpinned ones can).
const sysMemfdCreate = -1
