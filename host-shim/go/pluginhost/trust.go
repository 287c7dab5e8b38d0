package pluginhost

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unsafe"
)

// A plugin file, and every directory above it, must be owned by root or by the user running
// the host and not writable by group or others: whoever can write it can run code as the
// host. A sticky directory such as /tmp may be world-writable above an entry that root or the
// host's user owns, because only that owner can replace the entry.

const groupOtherWrite = 0o022

func trustedOwner(uid uint32) bool {
	return uid == 0 || uid == uint32(os.Geteuid())
}

func ownerAndMode(st *syscall.Stat_t) string {
	if !trustedOwner(st.Uid) {
		return fmt.Sprintf("it is owned by uid %d", st.Uid)
	}
	if st.Mode&groupOtherWrite != 0 {
		return fmt.Sprintf("it is writable by group or others (mode %o)", st.Mode&0o7777)
	}
	return ""
}

// openTrusted opens path read-only and checks what was opened: a regular file owned by root or
// the host's user, writable by nobody else, in directories that pass the same rule.
func openTrusted(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &TrustError{Path: path, Why: fmt.Sprintf("cannot open plugin %s: %v", path, err)}
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return fail(&TrustError{Path: path, Why: fmt.Sprintf("cannot open plugin %s: %v", path, err)})
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return fail(untrusted(path, "it is not a regular file"))
	}
	if why := ownerAndMode(&st); why != "" {
		return fail(untrusted(path, why))
	}
	// The directories of the file actually opened, whatever links led there.
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return fail(&TrustError{Path: path, Why: fmt.Sprintf("cannot open plugin %s: %v", path, err)})
	}
	if err := checkAncestors(path, real, st.Uid); err != nil {
		return fail(err)
	}
	return f, nil
}

// checkAncestors checks every directory above real (absolute, without links).
func checkAncestors(path, real string, childUID uint32) error {
	dir := real
	for dir != "/" {
		dir = filepath.Dir(dir)
		var st syscall.Stat_t
		if err := syscall.Stat(dir, &st); err != nil {
			return &TrustError{Path: path, Why: fmt.Sprintf("cannot check directory %s of plugin %s: %v", dir, path, err)}
		}
		if !trustedOwner(st.Uid) {
			return untrusted(path, fmt.Sprintf("its directory %s is owned by uid %d", dir, st.Uid))
		}
		if st.Mode&groupOtherWrite != 0 && !(st.Mode&syscall.S_ISVTX != 0 && trustedOwner(childUID)) {
			return untrusted(path, fmt.Sprintf("its directory %s is writable by group or others (mode %o)", dir, st.Mode&0o7777))
		}
		childUID = st.Uid
	}
	return nil
}

// checkTrustedDir: a directory searched for plugins must be one nobody but root or the host's
// user can add files to, sticky or not (anyone could otherwise drop an executor-* there).
func checkTrustedDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return &TrustError{Path: dir, Why: fmt.Sprintf("plugin directory refused: cannot open %s: %v", dir, err)}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(abs, &st); err != nil {
		return &TrustError{Path: dir, Why: fmt.Sprintf("plugin directory refused: cannot open %s: %v", dir, err)}
	}
	if why := ownerAndMode(&st); why != "" {
		return &TrustError{Path: dir, Why: "plugin directory refused: " + untrusted(dir, why).Why}
	}
	if err := checkAncestors(dir, abs, st.Uid); err != nil {
		return &TrustError{Path: dir, Why: "plugin directory refused: " + err.Error()}
	}
	return nil
}

func parsePin(path, pin string) (string, error) {
	p := strings.ToLower(strings.TrimSpace(pin))
	if _, err := hex.DecodeString(p); err != nil || len(p) != 64 {
		return "", &TrustError{Path: path, Why: fmt.Sprintf("the sha256 pin for %s is not 64 hex digits: %q", path, p)}
	}
	return p, nil
}

// Linux constants Go 1.19's syscall package does not name.
const (
	mfdCloexec      = 0x1
	mfdAllowSealing = 0x2
	mfdExec         = 0x10
	fAddSeals       = 1033
	fSealSeal       = 0x1
	fSealShrink     = 0x2
	fSealGrow       = 0x4
	fSealWrite      = 0x8
)

// sealedCopy copies the trusted file at path into a close-on-exec memfd sealed against any
// change and hashes the copy; with a pin, a copy whose digest differs is refused. Executing
// /proc/self/fd/N of the copy runs exactly the bytes that were hashed, whatever happens to the
// file afterwards (a rename, an in-place rewrite).
func sealedCopy(path, pin string) (*os.File, string, error) {
	want := ""
	if pin != "" {
		p, err := parsePin(path, pin)
		if err != nil {
			return nil, "", err
		}
		want = p
	}
	src, err := openTrusted(path)
	if err != nil {
		return nil, "", err
	}
	defer src.Close()
	sealErr := func(err error) error {
		return &TrustError{Path: path, Why: fmt.Sprintf("cannot make a sealed in-memory copy of plugin %s: %v", path, err)}
	}
	if sysMemfdCreate < 0 {
		return nil, "", sealErr(syscall.ENOSYS)
	}
	name, err := syscall.BytePtrFromString("executor-" + strings.TrimPrefix(filepath.Base(path), "executor-"))
	if err != nil {
		return nil, "", sealErr(err)
	}
	// MFD_EXEC asks for an executable memfd where the kernel knows the flag (vm.memfd_noexec
	// may otherwise refuse); older kernels refuse the flag itself with EINVAL.
	var fd uintptr
	var errno syscall.Errno
	for _, flags := range []uintptr{mfdCloexec | mfdAllowSealing | mfdExec, mfdCloexec | mfdAllowSealing} {
		fd, _, errno = syscall.Syscall(sysMemfdCreate, uintptr(unsafe.Pointer(name)), flags, 0)
		if errno != syscall.EINVAL {
			break
		}
	}
	if errno != 0 {
		return nil, "", sealErr(errno)
	}
	copyFile := os.NewFile(fd, "memfd:"+filepath.Base(path))
	fail := func(err error) (*os.File, string, error) {
		copyFile.Close()
		return nil, "", err
	}
	if _, err := io.Copy(copyFile, src); err != nil {
		return fail(&TrustError{Path: path, Why: fmt.Sprintf("cannot read plugin %s to check its checksum: %v", path, err)})
	}
	seals := uintptr(fSealWrite | fSealGrow | fSealShrink | fSealSeal)
	if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, copyFile.Fd(), fAddSeals, seals); errno != 0 {
		return fail(sealErr(errno))
	}
	// Hashed from the sealed copy: these are the bytes that run.
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(copyFile, 0, 1<<62)); err != nil {
		return fail(&TrustError{Path: path, Why: fmt.Sprintf("cannot read plugin %s to check its checksum: %v", path, err)})
	}
	got := hex.EncodeToString(h.Sum(nil))
	if want != "" && got != want {
		return fail(&TrustError{Path: path, Why: fmt.Sprintf("plugin %s has sha256 %s, but the configuration pins %s; it was not started. If the binary was upgraded on purpose, update the pin", path, got, want)})
	}
	return copyFile, got, nil
}
