"""Token scopes: what each bearer token may do."""

SALES_WRITE = "sales:write"
REFUNDS_WRITE = "refunds:write"
STOCK_WRITE = "stock:write"
READ = "read"
LEADS_READ = "leads:read"

ALL = (SALES_WRITE, REFUNDS_WRITE, STOCK_WRITE, READ, LEADS_READ)
