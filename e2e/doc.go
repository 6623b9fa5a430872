// Package e2e holds end-to-end tests that run podkey's real binaries as
// separate processes: built from this tree, against a SoftHSM2 token that
// the test initialises with softhsm2-util, talking over real sockets.
package e2e
