// Package migrations holds the database schema as numbered SQL files, embedded in the binary
// so that `erasure-worker migrate` needs nothing beside it. The queue package applies them.
package migrations

import "embed"

// FS holds the migration files, named NNN_description.sql and applied in order.
//
//go:embed *.sql
var FS embed.FS
