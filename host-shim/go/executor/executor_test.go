package executor

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"executorplugins.example/hostshim/models"
	"executorplugins.example/hostshim/storage"
)

func TestByteSizesTravelAsDatasizeText(t *testing.T) {
	for size, text := range map[ByteSize]string{GB: "1GB", 2 * KB: "2KB", 1500: "1500B", 0: "0B", 3 * MB: "3MB", KB + 1: "1025B"} {
		b, err := json.Marshal(size)
		if err != nil || string(b) != `"`+text+`"` {
			t.Fatalf("%d: %s %v", size, b, err)
		}
		var back ByteSize
		if err := json.Unmarshal(b, &back); err != nil || back != size {
			t.Fatalf("%s back: %d %v", b, back, err)
		}
	}
	for text, want := range map[string]ByteSize{"10 kib": 10 * KB, "2kilobytes": 2 * KB, "5": 5, "1 gb": GB} {
		if got, err := ParseByteSize(text); err != nil || got != want {
			t.Fatalf("%q: %d %v", text, got, err)
		}
	}
	for _, bad := range []string{"10Mb", "1Kb", "-1", "x", "5 parsecs"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Fatalf("%q was accepted", bad)
		}
	}
	limits, _ := json.Marshal(OutputLimits{MaxStdoutFileLength: GB, MaxStdoutReturnLength: 2 * KB, MaxStderrFileLength: GB, MaxStderrReturnLength: 2 * KB})
	if string(limits) != `{"MaxStdoutFileLength":"1GB","MaxStdoutReturnLength":"2KB","MaxStderrFileLength":"1GB","MaxStderrReturnLength":"2KB"}` {
		t.Fatalf("OutputLimits: %s", limits)
	}
}

func TestWireShapesUseBacalhausKeys(t *testing.T) {
	res, _ := json.Marshal(models.RunCommandResult{STDOUT: "o", STDERR: "e", ExitCode: 3})
	if string(res) != `{"Stdout":"o","StdoutTruncated":false,"stderr":"e","StderrTruncated":false,"ExitCode":3,"ErrorMsg":""}` {
		t.Fatalf("RunCommandResult: %s", res)
	}
	netw, _ := json.Marshal(models.NetworkConfig{Type: models.NetworkBridge})
	if string(netw) != `{"Type":"Bridge"}` {
		t.Fatalf("NetworkConfig: %s", netw)
	}
	var n models.NetworkConfig
	if err := json.Unmarshal([]byte(`{"type":" host "}`), &n); err != nil || n.Type != models.NetworkHost {
		t.Fatalf("decoding a network: %v %v", n.Type, err)
	}
	if err := json.Unmarshal([]byte(`{"Type":"Wifi"}`), &n); err == nil || !strings.Contains(err.Error(), "models.Network: unknown type 'Wifi'") {
		t.Fatalf("an unknown network: %v", err)
	}
	if err := json.Unmarshal([]byte(`{"Type":2}`), &n); err == nil {
		t.Fatal("a network number was accepted")
	}
	vol, _ := json.Marshal(storage.PreparedStorage{Volume: storage.StorageVolume{Type: storage.StorageVolumeConnectorBind, ReadOnly: true, Source: "/s", Target: "/t"}})
	if !strings.Contains(string(vol), `"Volume":{"type":1,"readOnly":true,"source":"/s","target":"/t"}`) {
		t.Fatalf("PreparedStorage: %s", vol)
	}
}

func TestWriteJobResultsTruncatesFilesAndResult(t *testing.T) {
	dir := t.TempDir()
	limits := OutputLimits{MaxStdoutFileLength: 6, MaxStdoutReturnLength: 3, MaxStderrFileLength: KB, MaxStderrReturnLength: KB}
	res := WriteJobResults(dir, strings.NewReader("abcdefghij"), bytes.NewReader([]byte("bad \xff")), 2, nil, limits)
	if res.STDOUT != "abc" || !res.StdoutTruncated || res.STDERR != "bad \uFFFD" || res.StderrTruncated || res.ExitCode != 2 || res.ErrorMsg != "" {
		t.Fatalf("result: %+v", res)
	}
	for name, want := range map[string]string{"stdout": "abcdef", "stderr": "bad \xff", "exitCode": "2"} {
		if got, _ := os.ReadFile(filepath.Join(dir, name)); string(got) != want {
			t.Fatalf("%s: %q", name, got)
		}
	}
	failed, err := FailResult(errors.New("boom"))
	if err == nil || failed.ErrorMsg != "boom" || failed.ExitCode != -1 || NewFailedResult("x").ErrorMsg != "x" {
		t.Fatalf("FailResult: %+v %v", failed, err)
	}
}
