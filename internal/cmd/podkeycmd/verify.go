package podkeycmd

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/token/jwks"
)

func decodeSignature(s string) ([]byte, error) {
	if b, err := hex.DecodeString(s); err == nil {
		return b, nil
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawURLEncoding.DecodeString(s)
}

func newVerifyCommand(cf *clientFlags) *cobra.Command {
	var keyID, sig, stsFile string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Ask keyd to verify an API-key signature (as a backend does)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sigBytes, err := decodeSignature(sig)
			if err != nil {
				return command.UsageError("--signature: not hex or base64")
			}
			var sts []byte
			switch stsFile {
			case "-":
				sts, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
			default:
				sts, err = os.ReadFile(stsFile)
			}
			if err != nil {
				return err
			}
			resp, err := callKeyd(cf, func(k keydv1.KeydClient) (*keydv1.VerifyResponse, error) {
				return k.Verify(cmd.Context(), &keydv1.VerifyRequest{AccessKeyId: keyID, StringToSign: sts, Signature: sigBytes})
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "valid: %s/%s pod %s object %s (suite %s, generation %d, expires %s)\n",
				resp.Namespace, resp.ServiceAccount, resp.PodUid, resp.Object, resp.Suite, resp.Generation, resp.Expiry.AsTime().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringVar(&keyID, "access-key-id", "", "access key id")
	cmd.Flags().StringVar(&sig, "signature", "", "signature, hex or base64")
	cmd.Flags().StringVar(&stsFile, "string-to-sign-file", "-", "file with the signed bytes; - for stdin")
	_ = cmd.MarkFlagRequired("access-key-id")
	_ = cmd.MarkFlagRequired("signature")
	return cmd
}

func newRevokeCommand(cf *clientFlags) *cobra.Command {
	var pf podFlags
	cmd := &cobra.Command{
		Use:   "revoke",
		Short: "Revoke a pod's credentials (as the node agent does when the pod goes away)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pf.podUID == "" {
				return command.UsageError("--pod-uid is required")
			}
			resp, err := callKeyd(cf, func(k keydv1.KeydClient) (*keydv1.RevokeResponse, error) {
				return k.Revoke(cmd.Context(), &keydv1.RevokeRequest{Pod: keydv1.NewPodIdentity(pf.identity())})
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked pod %s until %s\n", pf.podUID, resp.Until.AsTime().Format(time.RFC3339))
			return nil
		},
	}
	pf.register(cmd)
	return cmd
}

func newCACommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Export podkey's CA certificates"}
	var s string
	bundle := &cobra.Command{
		Use: "bundle", Short: "Print the CA bundle (PEM) of a suite", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := callKeyd(cf, func(k keydv1.KeydClient) (*keydv1.CABundleResponse, error) {
				return k.CABundle(cmd.Context(), &keydv1.CABundleRequest{Suite: s})
			})
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(resp.Pem)
			return err
		},
	}
	bundle.Flags().StringVar(&s, "suite", "intl", "gm or intl")
	cmd.AddCommand(bundle)
	return cmd
}

func newTokenCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "What receivers of podkey's tokens need"}
	cmd.AddCommand(&cobra.Command{
		Use:   "jwks",
		Short: "Print the JWK Set of the token-signing keys (every live generation, both suites)",
		Long: "Print the JWK Set that verifies the JWTs of kind token: ES256 keys on P-256 (intl) and\n" +
			"SM2SM3 keys on the SM2 curve (gm, \"crv\": \"SM2\"). keyd also serves it over HTTPS\n" +
			"with --jwks-listen at " + jwks.WellKnownPath + ".",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := callKeyd(cf, func(k keydv1.KeydClient) (*keydv1.TokenKeysResponse, error) {
				return k.TokenKeys(cmd.Context(), &keydv1.TokenKeysRequest{})
			})
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", resp.Jwks)
			return err
		},
	})
	return cmd
}

func newRenewCommand(cf *clientFlags) *cobra.Command {
	var req keydv1.ForceRenewalRequest
	cmd := &cobra.Command{
		Use:   "renew (--pod-uid UID | --namespace NS [--service-account SA])",
		Short: "Force fresh credentials for a pod, a service account or a namespace (e.g. after a suspected leak)",
		Long: `Force fresh credentials for a pod, a service account or a namespace.

What the scope's pods obtained until now is refused at once (Verify refuses
their API keys); podkey-csi renews their volumes at the kubelet's next
republish, about a minute later. Certificates and tokens already handed out
are not revoked (no CRL): they expire with their ttl.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (req.PodUid == "") == (req.Namespace == "") {
				return command.UsageError("give --pod-uid, or --namespace (with --service-account to narrow it)")
			}
			if req.ServiceAccount != "" && req.Namespace == "" {
				return command.UsageError("--service-account needs --namespace")
			}
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			r, err := admin.ForceRenewal(cmd.Context(), &req)
			if err != nil {
				return err
			}
			scope := "pod " + r.PodUid
			switch {
			case r.ServiceAccount != "":
				scope = "service account " + r.Namespace + "/" + r.ServiceAccount
			case r.Namespace != "":
				scope = "namespace " + r.Namespace
			}
			fmt.Fprintf(cmd.OutOrStdout(), "renewal %d: credentials of %s obtained until %s are refused; volumes renew at their next republish\n",
				r.Seq, scope, r.At.AsTime().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringVar(&req.PodUid, "pod-uid", "", "renew one pod")
	cmd.Flags().StringVar(&req.Namespace, "namespace", "", "renew a namespace's pods")
	cmd.Flags().StringVar(&req.ServiceAccount, "service-account", "", "with --namespace: renew that service account's pods")
	return cmd
}
