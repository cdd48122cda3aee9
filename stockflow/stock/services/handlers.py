"""Which domain service applies which kind of job."""

from stockflow.stock.services import sales

from ..models import Job

HANDLERS = {
    Job.Kind.SALE_PAID: sales.pay,
    Job.Kind.SALE_REFUND: sales.refund,
}
