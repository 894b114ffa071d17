"""Seeing inside: the report and its judgement (`report`), outages from ping's output
(`outage`), ladders (`ladder`), pictures (`plots`), a run's page (`page`), packet captures
(`captures`) and Wireshark's key tables (`keytables`). It knows the plan and the agent's trace
format, and nothing of Mininet or of a running lab."""
