package keydv1

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/suite"
)

// The API's messages from and to the domain types of pkg/: pods, object
// requests, image keys and their wrapped entries, renewal scopes. keyd's
// own types (issued credentials, stored secrets) are converted where keyd
// serves them.

// NewPodIdentity is p on the wire.
func NewPodIdentity(p pod.Identity) *PodIdentity {
	return &PodIdentity{Namespace: p.Namespace, ServiceAccount: p.ServiceAccount, PodName: p.Name, PodUid: p.UID, NodeName: p.Node}
}

// Identity is the pod x names, as claimed by the caller (nil names none).
func (x *PodIdentity) Identity() pod.Identity {
	return pod.Identity{Namespace: x.GetNamespace(), ServiceAccount: x.GetServiceAccount(), Name: x.GetPodName(),
		UID: x.GetPodUid(), Node: x.GetNodeName()}
}

// NewObjectRequest is one normalized object on the wire, without a CSR.
func NewObjectRequest(sp object.Spec) *ObjectRequest {
	return &ObjectRequest{Name: sp.Name, Kind: string(sp.Kind), Suite: string(sp.Suite), Ttl: sp.TTL.String(),
		Scope: sp.Scope, Length: int32(sp.Length), Audience: sp.Audience, Optional: sp.Optional}
}

// Spec is the object x asks for, validated and normalized; a CSR is
// required of certificates and refused with any other kind.
func (x *ObjectRequest) Spec() (object.Spec, error) {
	sp := object.Spec{
		Name: x.GetName(), Kind: object.Kind(x.GetKind()), Suite: suite.Name(x.GetSuite()), Algorithm: x.GetAlgorithm(),
		TTLText: x.GetTtl(), Scope: x.GetScope(), Length: int(x.GetLength()), Audience: x.GetAudience(),
		Optional: x.GetOptional(),
	}
	if err := sp.Normalize(); err != nil {
		return sp, err
	}
	if sp.Kind.NeedsCSR() != (len(x.GetCsr()) > 0) {
		if sp.Kind.NeedsCSR() {
			return sp, fmt.Errorf("object %q: a %s needs a CSR", sp.Name, sp.Kind)
		}
		return sp, fmt.Errorf("object %q: only certificate and tlcp objects take a CSR", sp.Name)
	}
	return sp, nil
}

// NewImageKeyEntries are a wrapped key blob's entries on the wire.
func NewImageKeyEntries(es []imagecrypt.Entry) []*ImageKeyEntry {
	out := make([]*ImageKeyEntry, len(es))
	for i, e := range es {
		out[i] = &ImageKeyEntry{KeyId: e.KeyID, Wrapped: e.Wrapped}
	}
	return out
}

// ImageKeyEntries are the entries x asks keyd to choose from.
func (x *UnwrapImageKeyRequest) ImageKeyEntries() []imagecrypt.Entry {
	out := make([]imagecrypt.Entry, len(x.GetEntries()))
	for i, e := range x.GetEntries() {
		out[i] = imagecrypt.Entry{KeyID: e.GetKeyId(), Wrapped: e.GetWrapped()}
	}
	return out
}

// NewImageKey is an image key's recipient on the wire: its id, suite and
// public key in PEM.
func NewImageKey(r imagecrypt.Recipient) (*ImageKey, error) {
	pemBytes, err := imagecrypt.MarshalRecipient(r)
	if err != nil {
		return nil, err
	}
	return &ImageKey{KeyId: r.KeyID, Suite: string(r.Suite), RecipientPem: pemBytes}, nil
}

// NewRenewal is a renewal order on the wire.
func NewRenewal(seq uint64, s pod.Scope, at, until time.Time) *Renewal {
	return &Renewal{Seq: seq, Namespace: s.Namespace, ServiceAccount: s.ServiceAccount, PodUid: s.UID,
		At: timestamppb.New(at), Until: timestamppb.New(until)}
}

// Scope is the pods a renewal order covers.
func (x *Renewal) Scope() pod.Scope {
	return pod.Scope{Namespace: x.GetNamespace(), ServiceAccount: x.GetServiceAccount(), UID: x.GetPodUid()}
}

// Scope is the pods a renewal request names.
func (x *ForceRenewalRequest) Scope() pod.Scope {
	return pod.Scope{Namespace: x.GetNamespace(), ServiceAccount: x.GetServiceAccount(), UID: x.GetPodUid()}
}
