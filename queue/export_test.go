package queue

// The retention statements, for tests that read their plans.
const (
	RetentionStatsSQL = retentionStatsSQL
	ToPseudonymiseSQL = toPseudonymiseSQL
	PseudonymiseSQL   = pseudonymiseSQL
	DeleteEvidenceSQL = deleteEvidenceSQL
)

// The outbox's statements, for tests that read their plans.
const (
	DueReportLanesSQL = dueReportLanesSQL
	ClaimReportsSQL   = claimReportsSQL
)
