package main

import (
	"os"

	"github.com/attestd/attestd/cmd/attestd/app"
)

func main() { os.Exit(app.Main()) }
