package service

import (
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// gcPercent is keyd's GOGC when the environment sets none. keyd's live
// heap is small (tens of MiB) and its allocation rate high: at the default
// of 100 it collected about 75 times a second at 64 callers (gctrace), 15
// at 400, and each collection also shrinks the gRPC workers' stacks, which
// the next SM3 call grows again. 400 measured 15-20% more credentials per
// second on two cores (podkey bench, medians of five interleaved runs);
// the memory limit below keeps it inside the container.
const gcPercent = 400

// TuneRuntime sets keyd's garbage collector: GOGC 400 unless GOGC is
// set, and GOMEMLIMIT to 90% of the container's memory limit (cgroup v1 or
// v2) unless GOMEMLIMIT is set, so the collector works harder near the
// limit instead of letting the kernel kill keyd.
func TuneRuntime(logger *slog.Logger) {
	gc := "from GOGC"
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
		gc = strconv.Itoa(gcPercent)
	}
	limit, err := memlimit.Set(memlimit.WithLogger(logger))
	if err != nil {
		logger.Warn("could not read the container's memory limit; GOMEMLIMIT left as it was", "error", err)
	}
	logger.Debug("garbage collector", "gcPercent", gc, "memoryLimitBytes", limit)
}
