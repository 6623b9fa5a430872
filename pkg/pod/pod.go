// Package pod names a pod as podkey knows it: the identity credentials are
// minted for, written into a volume's metadata, bound to a node and
// revoked for. It has no dependencies beyond the standard library, so the
// client library's file formats can use it too.
package pod

// Identity is a pod: its namespace, service account, name and UID, and
// the node it runs on where that is known (keyd's proven identities and
// revocations carry it; a volume's metadata leaves it out).
type Identity struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	Name           string `json:"name"`
	UID            string `json:"uid"`
	Node           string `json:"node,omitempty"`
}

// String is "namespace/name", the form logs and messages use.
func (p Identity) String() string { return p.Namespace + "/" + p.Name }
