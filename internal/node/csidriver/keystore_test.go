package csidriver_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// TestKeystoresLoadInJavaAndOpenSSL: a certificate object with the
// keystore formats is written as PKCS#12, JKS and a PKCS#12 trust store
// with their password file; keytool and openssl read each with the
// password, and a real JVM (docs/examples/java/PodkeyTLSClient.java)
// completes a mutually authenticated TLS handshake with a Go server
// using each key store. A wrong password is refused by both tools.
func TestKeystoresLoadInJavaAndOpenSSL(t *testing.T) {
	for _, tool := range []string{"java", "keytool", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: run hack/install-deps.sh", tool)
		}
	}
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-ks")
	if _, err := h.D.NodePublishVolume(ctx, publishReq(target, "uid-ks", "keystores")); err != nil {
		t.Fatal(err)
	}
	files, _ := volume.Current(target)
	want := "java-only.jks,java-only.pass,podkey-metadata.json,web.ca.crt,web.crt,web.jks,web.key,web.p12,web.pass,web.truststore.p12"
	if strings.Join(files, ",") != want {
		t.Fatalf("files %v", files)
	}
	path := func(name string) string { return filepath.Join(target, name) }
	pass := strings.TrimSpace(string(read(t, path("web.pass"))))
	if len(pass) < 32 || pass == strings.TrimSpace(string(read(t, path("java-only.pass")))) {
		t.Fatalf("keystore passwords: %d characters, or shared between objects", len(pass))
	}
	run := func(name string, args ...string) (string, error) {
		out, err := exec.Command(name, args...).CombinedOutput()
		return string(out), err
	}
	for _, c := range []struct{ file, typ, entries string }{
		{"web.p12", "PKCS12", "PrivateKeyEntry"},
		{"web.jks", "JKS", "PrivateKeyEntry"},
		{"web.truststore.p12", "PKCS12", "trustedCertEntry"},
	} {
		out, err := run("keytool", "-list", "-keystore", path(c.file), "-storetype", c.typ, "-storepass", pass)
		if err != nil || !strings.Contains(out, c.entries) {
			t.Fatalf("keytool %s: %v\n%s", c.file, err, out)
		}
		if out, err := run("keytool", "-list", "-keystore", path(c.file), "-storetype", c.typ, "-storepass", "wrong-password"); err == nil {
			t.Fatalf("keytool opened %s with a wrong password:\n%s", c.file, out)
		}
	}
	out, err := run("openssl", "pkcs12", "-in", path("web.p12"), "-info", "-noout", "-passin", "pass:"+pass)
	if err != nil || !strings.Contains(out, "PBES2") || !strings.Contains(out, "AES-256-CBC") {
		t.Fatalf("openssl pkcs12: %v\n%s", err, out)
	}
	if out, err := run("openssl", "pkcs12", "-in", path("web.p12"), "-info", "-noout", "-passin", "pass:wrong"); err == nil {
		t.Fatalf("openssl opened the PKCS#12 with a wrong password:\n%s", out)
	}

	// A Java service on each key store accepts a Go client holding another
	// pod's certificate from the same keyd; each side verifies the other
	// against podkey's CA (the Java side with the trust store podkey wrote).
	server, _ := filepath.Abs("../../../docs/examples/java/PodkeyTLSServer.java")
	client := clientConfig(t, h)
	for _, c := range []struct{ typ, store, trust, pass string }{
		{"PKCS12", "web.p12", "web.truststore.p12", "web.pass"},
		{"JKS", "web.jks", "web.truststore.p12", "web.pass"},
		{"JKS", "java-only.jks", "java-only.jks", "java-only.pass"},
	} {
		got, err := javaHandshake(server, client, c.typ, path(c.store), path(c.trust), path(c.pass))
		if err != nil || !strings.Contains(got, "pong") || !strings.Contains(got, "urn:podkey:pod:uid-client") {
			t.Fatalf("java on %s: %v\n%s", c.store, err, got)
		}
	}
}

// javaHandshake runs the Java service on a key store and talks to it once
// as the Go client, returning its answer.
func javaHandshake(server string, client *tls.Config, args ...string) (string, error) {
	cmd := exec.Command("java", append([]string{server}, args...)...)
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := bufio.NewReader(stdout)
	first, err := lines.ReadString('\n')
	port, ok := strings.CutPrefix(strings.TrimSpace(first), "listening ")
	if err != nil || !ok {
		return stderr.String(), fmt.Errorf("java did not listen: %q %v", first, err)
	}
	conn, err := tls.Dial("tcp", "127.0.0.1:"+port, client)
	if err != nil {
		return stderr.String(), err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		return stderr.String(), err
	}
	answer, err := bufio.NewReader(conn).ReadString('\n')
	return answer + stderr.String(), err
}

// clientConfig is a TLS 1.3 client with another pod's certificate from
// the harness's keyd, verifying the server's certificate against keyd's
// CA bundle. podkey's pod certificates are for client authentication
// (extended key usage clientAuth), so the check accepts any usage.
func clientConfig(t *testing.T, h *harness) *tls.Config {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.Keyd.Keyd.Issue(context.Background(), &keydv1.IssueRequest{
		Pod:     &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "client", PodUid: "uid-client", NodeName: "node-1"},
		Objects: []*keydv1.ObjectRequest{{Name: "cli", Kind: "certificate", Csr: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.Credentials[0].GetCertificate()
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	cert, err := tls.X509KeyPair(c.CertPem, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CaBundlePem)
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13,
		InsecureSkipVerify: true, // verified below, with any key usage
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		}}
}
