package keydv1

// DefaultSocket is where keyd serves its local unix socket unless told
// otherwise, and where its clients look for it.
const DefaultSocket = "/run/podkey/keyd.sock"
