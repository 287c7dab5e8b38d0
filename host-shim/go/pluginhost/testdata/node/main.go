// A program outside the module, as a compute node would be: it discovers the plugins in a
// directory, runs a native job, prints its result and its logs. Built by TestAProgramOutside
// TheModuleRunsAJob with only the module's exported API.
package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"executorplugins.example/hostshim/executor"
	"executorplugins.example/hostshim/models"
	"executorplugins.example/hostshim/pluginhost"
)

func main() {
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
}

func run(pluginDir, stateRoot string) error {
	ctx := context.Background()
	provider, err := pluginhost.Discover(ctx, pluginhost.Options{
		Dirs:      []string{pluginDir},
		StateRoot: stateRoot,
		Config:    map[string]any{"native": map[string]any{"retention": 600}},
	})
	if err != nil {
		return err
	}
	defer provider.Close()
	var executors executor.ExecutorProvider = provider
	fmt.Println("engines:", executors.Keys(ctx))
	native, err := executors.Get(ctx, "native")
	if err != nil {
		return err
	}
	result, err := native.Run(ctx, &executor.RunCommandRequest{
		JobID:       "job-1",
		ExecutionID: "exec-1",
		Network:     &models.NetworkConfig{Type: models.NetworkNone},
		ResultsDir:  filepath.Join(stateRoot, "results", "exec-1"),
		EngineParams: &models.SpecConfig{Type: "native", Params: map[string]interface{}{
			"Entrypoint": []string{"/bin/sh", "-c", "echo hello from the job; echo to stderr >&2; exit 4"},
		}},
		OutputLimits: executor.OutputLimits{
			MaxStdoutFileLength: executor.GB, MaxStdoutReturnLength: 2 * executor.KB,
			MaxStderrFileLength: executor.GB, MaxStderrReturnLength: 2 * executor.KB,
		},
	})
	if err != nil {
		return err
	}
	fmt.Printf("exit %d stdout %q stderr %q error %q\n", result.ExitCode, result.STDOUT, result.STDERR, result.ErrorMsg)
	logs, err := native.GetLogStream(ctx, executor.LogStreamRequest{ExecutionID: "exec-1"})
	if err != nil {
		return err
	}
	defer logs.Close()
	// Docker stdcopy frames: stream byte, three zeros, big-endian size, the bytes.
	header := make([]byte, 8)
	for {
		if _, err := io.ReadFull(logs, header); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		data := make([]byte, binary.BigEndian.Uint32(header[4:]))
		if _, err := io.ReadFull(logs, data); err != nil {
			return err
		}
		fmt.Printf("log %d %q\n", header[0], data)
	}
}
