package worker

import "time"

// WithRoundBudget returns cfg with rounds of the purge that end after d (retentionRoundBudget
// otherwise), for tests of a backlog that outlasts a round.
func WithRoundBudget(cfg RetentionConfig, d time.Duration) RetentionConfig {
	cfg.roundBudget = d
	return cfg
}
