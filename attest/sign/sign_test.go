package sign

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGitHubActionsToken(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer runtime-token" || r.URL.Query().Get("audience") != "sigstore" {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		w.Write([]byte(`{"count":1,"value":"eyJ.oidc.token"}`))
	}))
	defer srv.Close()
	t.Setenv("ACTIONS_ID_TOKEN_REQUEST_URL", srv.URL+"/token?api-version=2.0")
	t.Setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runtime-token")
	tok, err := GitHubActionsToken{}.Token(context.Background())
	if err != nil || tok != "eyJ.oidc.token" {
		t.Fatalf("token %q, %v", tok, err)
	}
	t.Setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "wrong")
	if _, err := (GitHubActionsToken{}).Token(context.Background()); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("refused request: %v", err)
	}
	t.Setenv("ACTIONS_ID_TOKEN_REQUEST_URL", "")
	if _, err := (GitHubActionsToken{}).Token(context.Background()); err == nil || !strings.Contains(err.Error(), "id-token: write") {
		t.Errorf("outside Actions: %v", err)
	}
}

func TestCommandAndFileTokens(t *testing.T) {
	ctx := context.Background()
	if tok, err := (CommandToken{Argv: []string{"echo", " abc "}}).Token(ctx); err != nil || tok != "abc" {
		t.Errorf("command token %q, %v", tok, err)
	}
	if _, err := (CommandToken{Argv: []string{"sh", "-c", "echo oops >&2; exit 3"}}).Token(ctx); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Errorf("failing command: %v", err)
	}
	if _, err := (CommandToken{Argv: []string{"true"}}).Token(ctx); err == nil {
		t.Error("empty output accepted")
	}
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte("first\n"), 0o600)
	f := FileToken{Path: p}
	if tok, _ := f.Token(ctx); tok != "first" {
		t.Errorf("file token %q", tok)
	}
	os.WriteFile(p, []byte("rotated"), 0o600) // re-read on every call
	if tok, _ := f.Token(ctx); tok != "rotated" {
		t.Errorf("rotated file token %q", tok)
	}
}

// The KMS providers are compiled in: a hashivault:// key without a Vault
// token fails in the provider (a configuration error it names), not with
// "no provider".
func TestKMSProvidersCompiledIn(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "")
	t.Setenv("VAULT_ADDR", "http://127.0.0.1:1")
	_, err := loadKey(context.Background(), "hashivault://attestd", nil)
	if err == nil {
		t.Fatal("a Vault key loaded without Vault")
	}
	if strings.Contains(err.Error(), "no kms provider") || !strings.Contains(err.Error(), "KMS hashivault") {
		t.Errorf("error %q: the hashivault provider is not compiled in", err)
	}
}
