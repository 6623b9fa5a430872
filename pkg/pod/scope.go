package pod

// Scope is a set of pods an operator names: one pod (UID), a service
// account (Namespace and ServiceAccount) or a namespace (Namespace alone).
type Scope struct{ Namespace, ServiceAccount, UID string }

// Covers reports whether the scope holds the pod.
func (s Scope) Covers(namespace, serviceAccount, uid string) bool {
	switch {
	case s.UID != "":
		return s.UID == uid
	case s.ServiceAccount != "":
		return s.Namespace == namespace && s.ServiceAccount == serviceAccount
	default:
		return s.Namespace != "" && s.Namespace == namespace
	}
}
