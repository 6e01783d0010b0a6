"""Monitoring: drift of live data against a model's reference profile (calibrated alarms), live performance, alerts."""
