package queue

import (
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The retention statements, for tests that read their plans.
const (
	RetentionStatsSQL = retentionStatsSQL
	ToPseudonymiseSQL = toPseudonymiseSQL
	PseudonymiseSQL   = pseudonymiseSQL
	DeleteEvidenceSQL = deleteEvidenceSQL
)

// NewWithStatementTimeout is New with another statement deadline than DefaultStatementTimeout.
func NewWithStatementTimeout(pool *pgxpool.Pool, timeout time.Duration) *Queue {
	return &Queue{pool: deadlinePool{Pool: pool, timeout: timeout}}
}
