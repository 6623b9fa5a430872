package podkeycmd

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/keyd/approval"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/suite"
)

// approvalFlags turn any sensitive admin call of the CLI into a request
// for approval (--request-out), or attach an approved request to it
// (--approval). Both act on the call itself, so every command that makes
// one (hsm rotate, policy set, secret put, store backup, ...) works under
// dual control unchanged.
type approvalFlags struct {
	approvalFile string
	requestOut   string
	requestAs    string
	requestKey   string
	requestTTL   time.Duration
	breakGlass   bool
}

func (a *approvalFlags) register(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&a.approvalFile, "approval", os.Getenv("PODKEY_APPROVAL"), "dual control: attach this approved request document to the call (env PODKEY_APPROVAL)")
	f.StringVar(&a.requestOut, "request-out", "", "dual control: write a request for approval of the call to this file instead of making it")
	f.StringVar(&a.requestAs, "request-as", "", "with --request-out: the requester's name in the roster")
	f.StringVar(&a.requestKey, "request-key", "", "with --request-out: the requester's private key (PEM PKCS#8, SM2 or ECDSA P-256)")
	f.DurationVar(&a.requestTTL, "request-ttl", 24*time.Hour, "with --request-out: how long the request may be approved and executed")
	f.BoolVar(&a.breakGlass, "break-glass", false, "with --request-out: a break-glass request, executed on the requester's signature alone while break-glass is armed")
}

// dialOptions are the interceptors that do it.
func (a *approvalFlags) dialOptions() []grpc.DialOption {
	if a.approvalFile == "" && a.requestOut == "" {
		return nil
	}
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if err := a.handle(method, req); err != nil {
				return err
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			cs, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				return nil, err
			}
			return &approvalStream{ClientStream: cs, a: a, method: method}, nil
		}),
	}
}

type approvalStream struct {
	grpc.ClientStream
	a      *approvalFlags
	method string
}

func (s *approvalStream) SendMsg(m any) error {
	if err := s.a.handle(s.method, m); err != nil {
		return err
	}
	return s.ClientStream.SendMsg(m)
}

// handle writes the request (and stops the call) or attaches the approval.
func (a *approvalFlags) handle(method string, req any) error {
	m, ok := req.(proto.Message)
	op := approval.Op(method)
	if !ok || !approval.Needs(op, m) {
		return nil
	}
	if a.requestOut != "" {
		params, err := approval.Params(m)
		if err != nil {
			return err
		}
		return a.writeRequest(op, params)
	}
	doc, err := os.ReadFile(a.approvalFile)
	if err != nil {
		return command.Exit(command.ExitUsage, err)
	}
	approval.Attach(m, doc)
	return nil
}

// writeRequest writes a request for op with params, signed by the
// requester, and ends the command.
func (a *approvalFlags) writeRequest(op string, params []byte) error {
	if a.requestAs == "" || a.requestKey == "" {
		return command.UsageError("--request-out needs --request-as NAME and --request-key FILE")
	}
	s, key, err := readPersonKey(a.requestKey)
	if err != nil {
		return command.Exit(command.ExitUsage, err)
	}
	req, err := approval.NewRequest(op, params, a.requestAs, time.Now(), a.requestTTL, a.breakGlass)
	if err != nil {
		return command.Exit(command.ExitUsage, err)
	}
	sig, err := approval.Sign(s, key, req)
	if err != nil {
		return err
	}
	doc := approval.Document{Request: req, Signatures: []approval.Signature{{Name: a.requestAs, Requester: true, Sig: sig}}}
	if err := writeDocument(a.requestOut, &doc); err != nil {
		return err
	}
	next := "approvers: podkey approval show %[2]s; podkey approval sign %[2]s --as NAME --role ROLE --key KEY\n" +
		"then: the same command with --approval %[2]s"
	if a.breakGlass {
		next = "BREAK-GLASS: no approver; the same command with --approval %[2]s executes it, once, and disarms break-glass"
	}
	return &command.Done{Message: fmt.Sprintf("request for %s written to %s (digest %s %s); nothing was changed.\n"+next,
		op, a.requestOut, hashName(s), approval.Digest(s, req))}
}

func hashName(s suite.Name) string {
	if s == suite.GM {
		return "SM3"
	}
	return "SHA-256"
}

// readPersonKey reads a person's private key: PKCS#8 PEM, SM2 (suite gm)
// or ECDSA P-256 (intl).
func readPersonKey(path string) (suite.Name, crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return "", nil, fmt.Errorf("%s: want a PEM PRIVATE KEY (PKCS#8)", path)
	}
	k, err := smx509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", path, err)
	}
	switch k := k.(type) {
	case *sm2.PrivateKey:
		return suite.GM, k, nil
	case *ecdsa.PrivateKey:
		if suite.Intl.MatchesKey(k.Public()) {
			return suite.Intl, k, nil
		}
	}
	return "", nil, fmt.Errorf("%s: want an SM2 or ECDSA P-256 key", path)
}

func readDocument(path string) (*approval.Document, *approval.Request, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, command.Exit(command.ExitUsage, err)
	}
	d, r, err := approval.ParseDocument(b)
	if err != nil {
		return nil, nil, command.Exit(command.ExitInvalid, err)
	}
	return d, r, nil
}

// writeDocument replaces path atomically.
func writeDocument(path string, d *approval.Document) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func newApprovalCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "approval", Short: "Dual control: the roster of people and roles, and requests they approve",
		Long: `Dual control (双人双控). Once a roster is set, keyd executes a sensitive
administrative call (key rotation and retirement, image keys, policy,
secrets, namespace renewals, backup, restore, the roster itself) only with
a request approved by the roster's quorum for it:

  podkey --request-out r.json --request-as dan --request-key dan.key hsm rotate kek
  podkey approval show r.json
  podkey approval sign r.json --as ann --role key-admin --key ann.key   (each approver)
  podkey --approval r.json hsm rotate kek

A request executes once, before it expires.`}
	cmd.AddCommand(newApprovalKeygenCommand(), newApprovalRosterCommand(cf), newApprovalShowCommand(),
		newApprovalSignCommand(), newApprovalAddSignatureCommand())
	return cmd
}

func newApprovalKeygenCommand() *cobra.Command {
	var suiteName, out string
	cmd := &cobra.Command{
		Use:   "keygen --out FILE",
		Short: "Make a person's key pair in a file (0600) and print the public key for the roster; a smart card's key serves as well",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := suite.Parse(suiteName)
			if err != nil {
				return command.UsageError("%v", err)
			}
			if out == "" {
				return command.UsageError("--out is required")
			}
			k, err := s.GenerateKey()
			if err != nil {
				return err
			}
			der, err := smx509.MarshalPKCS8PrivateKey(k)
			if err != nil {
				return err
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return command.Exit(command.ExitUsage, err)
			}
			if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			pub, err := approval.MarshalPublicKey(s, k.Public())
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), pub)
			return nil
		},
	}
	cmd.Flags().StringVar(&suiteName, "suite", "gm", "gm (SM2) or intl (ECDSA P-256): the roster's suite")
	cmd.Flags().StringVar(&out, "out", "", "the private key file to create")
	return cmd
}

func newApprovalRosterCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "roster", Short: "Show or set the roster (setting the first turns dual control on for good)"}
	cmd.AddCommand(&cobra.Command{
		Use: "show", Short: "Print the roster keyd holds on the token", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			r, err := admin.GetRoster(cmd.Context(), &keydv1.GetRosterRequest{})
			if err != nil {
				return err
			}
			return printRoster(cmd, r.Yaml)
		},
	}, &cobra.Command{
		Use: "set FILE", Short: "Set the roster from a YAML file: the first directly, later ones with --approval", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return command.Exit(command.ExitUsage, err)
			}
			if _, err := approval.ParseRoster(b); err != nil {
				return command.Exit(command.ExitInvalid, err)
			}
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			r, err := admin.SetRoster(cmd.Context(), &keydv1.RosterDocument{Yaml: b})
			if err != nil {
				return err
			}
			return printRoster(cmd, r.Yaml)
		},
	})
	return cmd
}

func printRoster(cmd *cobra.Command, b []byte) error {
	r, err := approval.ParseRoster(b)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "roster version %d, suite %s; break-glass (%v): %s\n", r.Version, r.Suite, r.BreakGlass.Roles,
		map[bool]string{true: "armed", false: "not armed"}[r.BreakGlass.Armed])
	for _, p := range r.People {
		fmt.Fprintf(w, "  %-16s %v\n", p.Name, p.Roles)
	}
	fmt.Fprintf(w, "quorum: %s", r.Default)
	for _, op := range approval.Operations {
		if rule, ok := r.Rules[op]; ok {
			fmt.Fprintf(w, "; %s: %s", op, rule)
		}
	}
	fmt.Fprintln(w)
	return nil
}

func newApprovalShowCommand() *cobra.Command {
	var input bool
	cmd := &cobra.Command{
		Use:   "show FILE",
		Short: "Show what a request asks for, its digest and who signed it (--signing-input: the exact bytes to sign with another tool)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, r, err := readDocument(args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if input {
				_, err := w.Write(approval.SigningInput(d.Request))
				return err
			}
			fmt.Fprintf(w, "request    %s\noperation  %s%s\nparameters %s\nrequester  %s\ncreated    %s\nexpires    %s\n",
				r.ID, r.Op, map[bool]string{true: " (BREAK-GLASS)"}[r.BreakGlass], showParams(r.Params), r.Requester,
				r.Created.Format(time.RFC3339), r.Expires.Format(time.RFC3339))
			fmt.Fprintf(w, "digest     SM3 %s\n           SHA-256 %s\n", approval.Digest(suite.GM, d.Request), approval.Digest(suite.Intl, d.Request))
			for _, s := range d.Signatures {
				as := string(s.Role)
				if s.Requester {
					as = "requester"
				}
				fmt.Fprintf(w, "signed by  %s as %s\n", s.Name, as)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&input, "signing-input", false, "write the bytes a signature covers, for signing with a smart card's own tool")
	return cmd
}

// showParams renders parameters for a person: protobuf JSON, with bytes
// fields (a policy, a roster) decoded when they are text.
func showParams(p json.RawMessage) string {
	var m map[string]any
	if json.Unmarshal(p, &m) != nil {
		return string(p)
	}
	out := string(p)
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			continue
		}
		if b, err := base64Std(s); err == nil && len(b) > 0 && isText(b) {
			out += fmt.Sprintf("\n  %s (decoded):\n    %s", k, strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "\n    "))
		}
	}
	return out
}

func newApprovalSignCommand() *cobra.Command {
	var as, role, keyFile string
	cmd := &cobra.Command{
		Use:   "sign FILE --as NAME --role ROLE --key KEY",
		Short: "Approve a request: add your signature to the file (check it first with approval show)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if as == "" || role == "" || keyFile == "" {
				return command.UsageError("--as, --role and --key are required")
			}
			d, _, err := readDocument(args[0])
			if err != nil {
				return err
			}
			s, key, err := readPersonKey(keyFile)
			if err != nil {
				return command.Exit(command.ExitUsage, err)
			}
			sig, err := approval.Sign(s, key, d.Request)
			if err != nil {
				return err
			}
			return addSignature(cmd, args[0], d, approval.Signature{Name: as, Role: approval.Role(role), Sig: sig})
		},
	}
	cmd.Flags().StringVar(&as, "as", "", "your name in the roster")
	cmd.Flags().StringVar(&role, "role", "", "the role you approve in (key-admin, operator, security-officer)")
	cmd.Flags().StringVar(&keyFile, "key", "", "your private key (PEM PKCS#8)")
	return cmd
}

func newApprovalAddSignatureCommand() *cobra.Command {
	var as, role, sigFile string
	cmd := &cobra.Command{
		Use:   "add-signature FILE --as NAME --role ROLE --signature SIG",
		Short: "Add a signature made elsewhere (a smart card) over the request's signing input: ASN.1 DER, SM2-with-SM3 or ECDSA-with-SHA256",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if as == "" || role == "" || sigFile == "" {
				return command.UsageError("--as, --role and --signature are required")
			}
			d, _, err := readDocument(args[0])
			if err != nil {
				return err
			}
			sig, err := os.ReadFile(sigFile)
			if err != nil {
				return command.Exit(command.ExitUsage, err)
			}
			return addSignature(cmd, args[0], d, approval.Signature{Name: as, Role: approval.Role(role), Sig: sig})
		},
	}
	cmd.Flags().StringVar(&as, "as", "", "the signer's name in the roster")
	cmd.Flags().StringVar(&role, "role", "", "the role they approve in")
	cmd.Flags().StringVar(&sigFile, "signature", "", "the DER signature file")
	return cmd
}

func addSignature(cmd *cobra.Command, path string, d *approval.Document, s approval.Signature) error {
	for _, have := range d.Signatures {
		if have.Name == s.Name {
			return command.Exit(command.ExitInvalid, errors.New(s.Name+" has signed this request already; one person counts once"))
		}
	}
	d.Signatures = append(d.Signatures, s)
	if err := writeDocument(path, d); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s approved as %s; %d signature(s)\n", s.Name, s.Role, len(d.Signatures))
	return nil
}

func base64Std(s string) ([]byte, error) { return base64.StdEncoding.Strict().DecodeString(s) }

func isText(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if r < 0x20 && r != '\n' && r != '\t' && r != '\r' {
			return false
		}
	}
	return true
}
