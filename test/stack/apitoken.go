package stack

import (
	"fmt"
	"os"
	"strings"
)

// APIToken reads the daemon's API bearer token from path (the
// <data_dir>/api.token `attestd serve` creates, or a configured
// api.token_file): the first line that is not blank or a # comment.
func APIToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("the daemon's API token: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			return line, nil
		}
	}
	return "", fmt.Errorf("the daemon's API token: no token in %s", path)
}
