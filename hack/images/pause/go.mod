// The dev cluster's sandbox ("pause") image: one static program, no dependencies.
module nodesysctl.io/hack/images/pause

go 1.26.0
