"""Which domain service applies which kind of job."""

from api.sales import services as sales

from .models import Job

HANDLERS = {
    Job.Kind.SALE_PAID: sales.pay,
    Job.Kind.SALE_REFUND: sales.refund,
}
