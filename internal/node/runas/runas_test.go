package runas

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/podkey/podkey/pkg/object"
)

func TestOfReadsEverySecurityContext(t *testing.T) {
	p := &corev1.Pod{Spec: corev1.PodSpec{
		SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](1000),
			FSGroup: ptr.To[int64](2000), SupplementalGroups: []int64{3000, 2000}},
		InitContainers: []corev1.Container{{SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](1500)}}},
		Containers:     []corev1.Container{{}, {SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](1001), RunAsGroup: ptr.To[int64](4000)}}},
	}}
	got := Of(p)
	if !slices.Equal(got.Users, []int64{1000, 1500, 1001}) || !slices.Equal(got.Groups, []int64{1000, 2000, 3000, 4000}) {
		t.Fatalf("%+v", got)
	}
	for _, c := range []struct {
		o  object.Owner
		ok bool
	}{
		{object.Owner{UID: ptr.To[int64](1001)}, true},
		{object.Owner{UID: ptr.To[int64](0)}, false},
		{object.Owner{GID: ptr.To[int64](3000)}, true},
		{object.Owner{UID: ptr.To[int64](1500), GID: ptr.To[int64](5000)}, false},
	} {
		if err := got.Allows(&c.o); (err == nil) != c.ok {
			t.Errorf("%+v: %v", c.o, err)
		}
	}
	if err := Of(&corev1.Pod{}).Allows(&object.Owner{UID: ptr.To[int64](0)}); err != nil {
		t.Fatalf("a pod that names no user allows any owner: %v", err)
	}
}
