# Example custom rule: package attestd, deny contains a message (or
# {"rule": …, "msg": …, "subject": …}) for each violation.
package attestd

deny contains {"rule": "sbom-size", "subject": s.digest, "msg": sprintf("%d packages: more than 2000, split the image", [s.sbom.packages])} if {
	some s in input.subjects
	s.sbom.packages > 2000
}
