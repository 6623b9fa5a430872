package pod

// Scope is a set of pods an operator names: one pod (UID), a service
// account (Namespace and ServiceAccount) or a namespace (Namespace alone).
// Its JSON form is keyd's stored renewal orders' (podUID for the UID).
type Scope struct {
	Namespace      string `json:"namespace,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
	UID            string `json:"podUID,omitempty"`
}

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
