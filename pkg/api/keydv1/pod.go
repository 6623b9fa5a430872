package keydv1

import "github.com/podkey/podkey/pkg/pod"

// NewPodIdentity is p on the wire.
func NewPodIdentity(p pod.Identity) *PodIdentity {
	return &PodIdentity{Namespace: p.Namespace, ServiceAccount: p.ServiceAccount, PodName: p.Name, PodUid: p.UID, NodeName: p.Node}
}

// Identity is the pod x names, as claimed by the caller (nil names none).
func (x *PodIdentity) Identity() pod.Identity {
	return pod.Identity{Namespace: x.GetNamespace(), ServiceAccount: x.GetServiceAccount(), Name: x.GetPodName(),
		UID: x.GetPodUid(), Node: x.GetNodeName()}
}
