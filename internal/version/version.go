// Package version carries the build's version, set at link time with
// -ldflags "-X github.com/podkey/podkey/internal/version.Version=...".
package version

// Version is the podkey release or commit; "dev" in unversioned builds.
var Version = "dev"
