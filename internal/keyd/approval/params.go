package approval

import (
	"path"
	"slices"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Op is the operation a gRPC method names ("/podkey.keyd.v1.Admin/RotateKey"
// → "RotateKey").
func Op(fullMethod string) string { return path.Base(fullMethod) }

// Needs reports whether a call of op with request m needs approval once a
// roster is set. A forced renewal of one pod does not: it is routine, and
// only refuses credentials.
func Needs(op string, m proto.Message) bool {
	if !slices.Contains(Operations, op) {
		return false
	}
	if op == "ForceRenewal" {
		if f := field(m, "pod_uid"); f != nil && m.ProtoReflect().Get(f).String() != "" {
			return false
		}
	}
	return true
}

func field(m proto.Message, name protoreflect.Name) protoreflect.FieldDescriptor {
	return m.ProtoReflect().Descriptor().Fields().ByName(name)
}

// Attached returns the approval document carried by request m.
func Attached(m proto.Message) []byte {
	if f := field(m, "approval"); f != nil {
		return m.ProtoReflect().Get(f).Bytes()
	}
	return nil
}

// Attach sets the approval document carried by request m.
func Attach(m proto.Message, doc []byte) bool {
	f := field(m, "approval")
	if f == nil {
		return false
	}
	m.ProtoReflect().Set(f, protoreflect.ValueOfBytes(doc))
	return true
}

// Params are request m's parameters as approved: its protobuf JSON
// mapping, canonical, without the approval and without a secret value
// (PutSecret's value and PutDatabase's admin connection string are given
// at execution, never signed or audited).
func Params(m proto.Message) ([]byte, error) {
	c := proto.Clone(m)
	r := c.ProtoReflect()
	for _, name := range []protoreflect.Name{"approval", "value", "admin_connection"} {
		if f := field(c, name); f != nil {
			r.Clear(f)
		}
	}
	b, err := protojson.Marshal(c)
	if err != nil {
		return nil, err
	}
	return Canonical(b)
}
