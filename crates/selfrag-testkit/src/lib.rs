//! Conformance suites and test-server provisioning for selfrag storage backends
