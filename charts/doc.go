// Package charts holds podkey's Helm chart (charts/podkey) and the tests
// that run the real helm, pinned as a Go tool in go.mod, against it: lint,
// rendering with the defaults and with a vendor HSM, the values schema
// refusing bad values, and manifests/ being the chart's current rendering.
package charts
