// Package attack is podkey's standing adversarial suite: one package per
// surface under attack, each test named after the property it defends, run
// by make test. They run real parts (keyd on SoftHSM2, PostgreSQL, the
// backend middleware, tmpfs) in process or as processes, and need no
// Kubernetes cluster.
package attack
