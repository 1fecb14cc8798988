//! The custom resources `DriftPolicy` and `DriftReport` (group `driftwatch.io`, `v1alpha1`).
//! Built in the controller issue; PRODUCT.md section 2 is the contract.
