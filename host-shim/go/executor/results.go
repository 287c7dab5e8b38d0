package executor

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"executorplugins.example/hostshim/models"
)

// The result files Bacalhau publishes.
const (
	DownloadFilenameStdout   = "stdout"
	DownloadFilenameStderr   = "stderr"
	DownloadFilenameExitCode = "exitCode"
)

// NewFailedResult is a result for a system failure: ExitCode -1 and the reason.
func NewFailedResult(reason string) *models.RunCommandResult {
	return &models.RunCommandResult{ExitCode: -1, ErrorMsg: reason}
}

// FailResult is NewFailedResult of the error's text, and the error.
func FailResult(err error) (*models.RunCommandResult, error) {
	return NewFailedResult(err.Error()), err
}

// WriteJobResults produces files and a models.RunCommandResult in the standard format,
// including truncating the contents of both where necessary to fit within system-defined
// limits.
//
// It will consume only the bytes from the passed io.Readers that it needs to correctly form
// job outputs. Once the command returns, the readers can close.
func WriteJobResults(
	resultsDir string,
	stdout, stderr io.Reader,
	exitcode int,
	err error,
	limits OutputLimits,
) *models.RunCommandResult {
	result := models.NewRunCommandResult()
	var failures []string
	streams := []struct {
		r         io.Reader
		text      *string
		truncated *bool
		name      string
		fileLimit ByteSize
		keep      ByteSize
	}{
		{stdout, &result.STDOUT, &result.StdoutTruncated, DownloadFilenameStdout, limits.MaxStdoutFileLength, limits.MaxStdoutReturnLength},
		{stderr, &result.STDERR, &result.StderrTruncated, DownloadFilenameStderr, limits.MaxStderrFileLength, limits.MaxStderrReturnLength},
	}
	for _, s := range streams {
		if werr := writeStream(resultsDir, s.r, s.name, s.fileLimit, s.keep, s.text, s.truncated); werr != nil {
			failures = append(failures, werr.Error())
		}
	}
	code := []byte(fmt.Sprint(exitcode))
	if werr := writeFile(filepath.Join(resultsDir, DownloadFilenameExitCode), bytes.NewReader(code), int64(len(code))); werr != nil {
		failures = append(failures, werr.Error())
	}
	result.ExitCode = exitcode
	if err != nil {
		failures = append([]string{err.Error()}, failures...)
	}
	result.ErrorMsg = strings.Join(failures, "; ")
	return result
}

// writeStream keeps up to fileLimit bytes in the file and the first keep bytes in text; a
// stream longer than keep is truncated. It reads one byte past the larger limit to know.
func writeStream(dir string, r io.Reader, name string, fileLimit, keep ByteSize, text *string, truncated *bool) error {
	if r == nil {
		r = bytes.NewReader(nil)
	}
	most := fileLimit
	if keep > most {
		most = keep
	}
	var head bytes.Buffer
	var total int64
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	limited := io.LimitReader(r, int64(most)+1)
	var writeErr error
	for {
		n, rerr := limited.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if room := int64(fileLimit) - total; room > 0 && writeErr == nil {
				part := chunk
				if int64(len(part)) > room {
					part = part[:room]
				}
				if _, werr := f.Write(part); werr != nil {
					writeErr = fmt.Errorf("writing %s: %w", name, werr)
				}
			}
			if room := int(keep) - head.Len(); room > 0 {
				part := chunk
				if len(part) > room {
					part = part[:room]
				}
				head.Write(part)
			}
			total += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("reading %s: %w", name, rerr)
		}
	}
	*text = strings.ToValidUTF8(head.String(), "\uFFFD")
	*truncated = total > int64(keep)
	if writeErr != nil {
		return writeErr
	}
	return f.Close()
}

func writeFile(path string, r io.Reader, n int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Base(path), err)
	}
	if _, err := io.CopyN(f, r, n); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", filepath.Base(path), err)
	}
	return f.Close()
}
