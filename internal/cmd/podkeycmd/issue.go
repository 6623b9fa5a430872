package podkeycmd

import (
	"crypto"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
)

type podFlags struct{ namespace, serviceAccount, pod, podUID, node string }

func (pf *podFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&pf.namespace, "namespace", "default", "pod namespace")
	f.StringVar(&pf.serviceAccount, "service-account", "default", "pod service account")
	f.StringVar(&pf.pod, "pod", "debug", "pod name")
	f.StringVar(&pf.podUID, "pod-uid", "", "pod UID (default: a random one)")
	f.StringVar(&pf.node, "node", "", "node name")
}

func (pf *podFlags) identity() pod.Identity {
	p := pod.Identity{Namespace: pf.namespace, ServiceAccount: pf.serviceAccount, Name: pf.pod, UID: pf.podUID, Node: pf.node}
	if p.UID == "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
		p.UID = fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
	}
	return p
}

// parseObjectFlag reads NAME:KIND[:SUITE].
func parseObjectFlag(s string) (object.Spec, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return object.Spec{}, command.UsageError("--object %q: want NAME:KIND[:SUITE]", s)
	}
	sp := object.Spec{Name: parts[0], Kind: object.Kind(parts[1])}
	if len(parts) == 3 {
		sp.Suite = "gm"
		if parts[2] != "gm" {
			sp.Suite = "intl"
		}
	}
	if err := sp.Normalize(); err != nil {
		return sp, command.UsageError("%v", err)
	}
	return sp, nil
}

func newIssueCommand(cf *clientFlags) *cobra.Command {
	var (
		pf     podFlags
		objs   []string
		file   string
		reveal bool
		output string
	)
	cmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue credentials by hand for debugging (secrets redacted unless --reveal)",
		Long: `issue asks keyd for credentials as a pod would and prints them.

Objects come from --object NAME:KIND[:SUITE] or from -f FILE, a YAML list in
the format of a SecretProviderClass's objects parameter. Certificate keys
are generated here and only the CSR is sent. Secret values, keys and tokens
are printed only with --reveal.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			specs, err := issueSpecs(file, objs)
			if err != nil {
				return err
			}
			req, keys, err := keydclient.IssueRequest(pf.identity(), "", specs)
			if err != nil {
				return err
			}
			resp, err := callKeyd(cf, func(k keydv1.KeydClient) (*keydv1.IssueResponse, error) { return k.Issue(cmd.Context(), req) })
			if err != nil {
				return err
			}
			view := make([]issuedView, len(resp.Credentials))
			for i, c := range resp.Credentials {
				view[i] = newIssuedView(c, keys[c.Name], reveal)
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{"pod": req.Pod, "credentials": view})
			}
			return printIssued(cmd.OutOrStdout(), req.Pod, view)
		},
	}
	pf.register(cmd)
	cmd.Flags().StringSliceVar(&objs, "object", nil, "object NAME:KIND[:SUITE] (repeatable)")
	cmd.Flags().StringVarP(&file, "file", "f", "", "YAML list of objects (SecretProviderClass objects format)")
	cmd.Flags().BoolVar(&reveal, "reveal", false, "print secret values (debugging only)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// issueSpecs reads the objects of -f FILE and of every --object flag.
func issueSpecs(file string, objs []string) ([]object.Spec, error) {
	var specs []object.Spec
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		if specs, err = object.ParseList(data); err != nil {
			return nil, command.UsageError("%s: %v", file, err)
		}
	}
	for _, o := range objs {
		sp, err := parseObjectFlag(o)
		if err != nil {
			return nil, err
		}
		specs = append(specs, sp)
	}
	if len(specs) == 0 {
		return nil, command.UsageError("name at least one object with --object or -f")
	}
	return specs, nil
}

// issuedView is what the CLI prints: public fields always, secret fields
// only revealed on request.
type issuedView struct {
	Name        string    `json:"name"`
	Kind        string    `json:"kind"`
	Suite       string    `json:"suite"`
	Generation  int64     `json:"generation"`
	Expiry      time.Time `json:"expiry"`
	RenewAt     time.Time `json:"renewAt"`
	AccessKeyID string    `json:"accessKeyId,omitempty"`
	Subject     string    `json:"certificateSubject,omitempty"`
	// Chain is a certificate, then the CA bundle that verifies it (PEM):
	// public, and what the private key in Secret is used with.
	Chain string `json:"certificateChain,omitempty"`
	// Login names a database login (the password is its Secret).
	Login  string `json:"databaseLogin,omitempty"`
	Secret string `json:"secret"`
}

func redacted(n int) string { return fmt.Sprintf("[redacted: %d bytes]", n) }

func newIssuedView(c *keydv1.Credential, key crypto.Signer, reveal bool) issuedView {
	v := issuedView{Name: c.Name, Kind: c.Kind, Suite: c.Suite, Generation: c.Generation,
		Expiry: c.Expiry.AsTime(), RenewAt: c.RenewAt.AsTime()}
	var secret []byte
	size := -1 // size of the secret as issued, when it differs from its printed form
	switch p := c.Payload.(type) {
	case *keydv1.Credential_ApiKey:
		v.AccessKeyID, secret = p.ApiKey.AccessKeyId, []byte(fmt.Sprintf("%x", p.ApiKey.SecretKey))
		size = len(p.ApiKey.SecretKey)
	case *keydv1.Credential_Certificate:
		v.Chain = string(p.Certificate.CertPem) + string(p.Certificate.CaBundlePem)
		if b, _ := pem.Decode(p.Certificate.CertPem); b != nil {
			if cert, err := smx509.ParseCertificate(b.Bytes); err == nil {
				v.Subject = cert.Subject.CommonName
				for _, u := range cert.URIs {
					v.Subject += " " + u.String()
				}
			}
		}
		if der, err := smx509.MarshalPKCS8PrivateKey(key); err == nil {
			secret = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		}
	case *keydv1.Credential_Tlcp:
		pair, err := keydclient.OpenTLCP(p.Tlcp.CsrResponse, p.Tlcp.CaBundlePem, key)
		if err != nil {
			v.Secret = "tlcp pair does not open: " + err.Error()
			return v
		}
		defer pair.Zero()
		v.Chain = string(pair.SignCertPEM) + string(pair.EncCertPEM) + string(p.Tlcp.CaBundlePem)
		if der, err := smx509.MarshalPKCS8PrivateKey(key); err == nil {
			secret = append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), pair.EncKeyPEM...)
		}
	case *keydv1.Credential_DerivedKey:
		secret, size = []byte(fmt.Sprintf("%x", p.DerivedKey.Key)), len(p.DerivedKey.Key)
	case *keydv1.Credential_Token:
		secret = []byte(p.Token.Jwt)
	case *keydv1.Credential_Secret:
		secret = p.Secret.Value
	case *keydv1.Credential_Database:
		d := p.Database
		v.Login = fmt.Sprintf("%s user %s at %s:%d/%s", d.Engine, d.User, d.Host, d.Port, d.Database)
		secret = d.Password
	}
	if size < 0 {
		size = len(secret)
	}
	if reveal {
		v.Secret = string(secret)
	} else {
		v.Secret = redacted(size)
	}
	return v
}

func printIssued(out io.Writer, pod *keydv1.PodIdentity, view []issuedView) error {
	fmt.Fprintf(out, "pod %s/%s (uid %s, service account %s)\n", pod.Namespace, pod.PodName, pod.PodUid, pod.ServiceAccount)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tKIND\tSUITE\tGEN\tEXPIRES\tRENEW AT\tSECRET")
	for _, v := range view {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", v.Name, v.Kind, v.Suite, v.Generation,
			v.Expiry.Format(time.RFC3339), v.RenewAt.Format(time.RFC3339), oneLine(v.Secret))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, v := range view {
		if v.AccessKeyID != "" {
			fmt.Fprintf(out, "%s access key id: %s\n", v.Name, v.AccessKeyID)
		}
		if v.Subject != "" {
			fmt.Fprintf(out, "%s certificate: %s\n", v.Name, v.Subject)
		}
		if v.Chain != "" && !strings.HasPrefix(v.Secret, "[redacted") {
			// Revealed: the key's whole use, the chain its certificate needs.
			fmt.Fprintf(out, "%s private key:\n%s%s certificate chain:\n%s", v.Name, v.Secret, v.Name, v.Chain)
		}
	}
	return nil
}

func oneLine(s string) string {
	if strings.Contains(s, "\n") {
		return strings.ReplaceAll(strings.TrimSpace(s), "\n", "\\n")
	}
	return s
}
