package sign

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/sigstore/pkg/signature/kms"

	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	signatureoptions "github.com/sigstore/sigstore/pkg/signature/options"
)

// loadKey opens keyRef: a sigstore KMS URI (awskms://, gcpkms://,
// azurekms://, hashivault://; the provider must be compiled in) or a cosign
// private key file, decrypted with pass.
func loadKey(ctx context.Context, keyRef string, pass func(bool) ([]byte, error)) (signature.SignerVerifier, error) {
	for _, p := range []string{"awskms://", "gcpkms://", "azurekms://", "hashivault://"} {
		if strings.HasPrefix(keyRef, p) {
			sv, err := kms.Get(ctx, keyRef, crypto.SHA256)
			if err != nil {
				return nil, fmt.Errorf("KMS %s: %w", strings.TrimSuffix(p, "://"), err)
			}
			return sv, nil
		}
	}
	pemBytes, err := os.ReadFile(keyRef)
	if err != nil {
		return nil, err
	}
	if pass == nil {
		pass = func(bool) ([]byte, error) { return nil, nil }
	}
	pw, err := pass(false)
	if err != nil {
		return nil, fmt.Errorf("key password: %w", err)
	}
	return cosign.LoadPrivateKey(pemBytes, pw, nil)
}

// keypair adapts a sigstore SignerVerifier (key file or KMS) to
// sigstore-go's Keypair, as cosign's internal SignerVerifierKeypair does.
type keypair struct {
	sv     signature.SignerVerifier
	pub    crypto.PublicKey
	hint   []byte
	keyAlg string
	alg    signature.AlgorithmDetails
}

func newKeypair(sv signature.SignerVerifier) (*keypair, error) {
	pub, err := sv.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	sum := sha256.Sum256(der)
	k := &keypair{sv: sv, pub: pub, hint: []byte(base64.StdEncoding.EncodeToString(sum[:]))}
	switch pub.(type) {
	case *ecdsa.PublicKey:
		k.keyAlg = "ECDSA"
	case *rsa.PublicKey:
		k.keyAlg = "RSA"
	case ed25519.PublicKey:
		k.keyAlg = "ED25519"
	default:
		return nil, errors.New("unsupported key type")
	}
	if k.alg, err = signature.GetDefaultAlgorithmDetails(pub); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *keypair) GetHashAlgorithm() protocommon.HashAlgorithm { return k.alg.GetProtoHashType() }
func (k *keypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return k.alg.GetSignatureAlgorithm()
}
func (k *keypair) GetHint() []byte                { return k.hint }
func (k *keypair) GetKeyAlgorithm() string        { return k.keyAlg }
func (k *keypair) GetPublicKey() crypto.PublicKey { return k.pub }
func (k *keypair) GetPublicKeyPem() (string, error) {
	b, err := cryptoutils.MarshalPublicKeyToPEM(k.pub)
	return string(b), err
}

func (k *keypair) SignData(ctx context.Context, data []byte) ([]byte, []byte, error) {
	h := k.alg.GetHashType().New()
	h.Write(data)
	digest := h.Sum(nil)
	sig, err := k.sv.SignMessage(bytes.NewReader(data), signatureoptions.WithContext(ctx), signatureoptions.WithDigest(digest))
	if err != nil {
		return nil, nil, err
	}
	return sig, digest, nil
}
