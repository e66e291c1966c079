// Package policy will be attestd's pure evaluation: facts in (policy.Input),
// decision out, from versioned YAML rules and Rego — no I/O, so verification
// and `attestd policy test` run offline. policy/promote plans promotions as
// pure Edge values. Built by the promotion gate issue; until then the
// pipeline reports evaluation as skipped and never promotes.
package policy
