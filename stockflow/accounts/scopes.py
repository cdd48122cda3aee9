"""Token scopes: what each bearer token may do."""

SALES_WRITE = "sales:write"
REFUNDS_WRITE = "refunds:write"
STOCK_WRITE = "stock:write"
READ = "read"
LEADS_READ = "leads:read"
JOBS_OPERATE = "jobs:operate"  # retry / re-send jobs (operators, not API callers)

ALL = (SALES_WRITE, REFUNDS_WRITE, STOCK_WRITE, READ, LEADS_READ, JOBS_OPERATE)
