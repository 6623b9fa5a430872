// A Java service that uses a pod's podkey keystore: it loads the key store
// (PKCS12 or JKS) and the trust store podkey wrote, with the password from
// their .pass file, and accepts one mutually authenticated TLS connection
// (clients must present a certificate from podkey's CA). Java 11+ runs it
// from source:
//
//   java PodkeyTLSServer.java PKCS12 /podkey/web.p12 /podkey/web.truststore.p12 /podkey/web.pass
//
// It prints the port it listens on, then answers a line with "pong" and
// the client certificate's subject alternative names.
import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

public class PodkeyTLSServer {
    static KeyStore load(String type, String path, char[] password) throws Exception {
        KeyStore ks = KeyStore.getInstance(type);
        try (FileInputStream in = new FileInputStream(path)) {
            ks.load(in, password);
        }
        return ks;
    }

    public static void main(String[] args) throws Exception {
        char[] password = Files.readString(Path.of(args[3])).trim().toCharArray();
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(load(args[0], args[1], password), password);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(load(args[2].endsWith(".jks") ? "JKS" : "PKCS12", args[2], password));
        SSLContext ctx = SSLContext.getInstance("TLSv1.3");
        ctx.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);
        try (SSLServerSocket server = (SSLServerSocket) ctx.getServerSocketFactory().createServerSocket(0)) {
            server.setNeedClientAuth(true);
            System.out.println("listening " + server.getLocalPort());
            System.out.flush();
            try (SSLSocket s = (SSLSocket) server.accept()) {
                s.startHandshake();
                X509Certificate peer = (X509Certificate) s.getSession().getPeerCertificates()[0];
                BufferedReader in = new BufferedReader(new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8));
                in.readLine();
                OutputStream out = s.getOutputStream();
                out.write(("pong " + peer.getSubjectAlternativeNames() + "\n").getBytes(StandardCharsets.UTF_8));
                out.flush();
            }
        }
    }
}
