"""The prober: probes the instances it owns and publishes one ProbeResult per probe."""
