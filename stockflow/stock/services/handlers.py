"""Which domain service applies which kind of job."""

from stockflow.stock.services import payment, refund

from ..models import Job

HANDLERS = {
    Job.Kind.SALE_PAID: payment.pay,
    Job.Kind.SALE_REFUND: refund.refund,
}
# Kinds settled many jobs per transaction (runner.run); refunds stay one per transaction.
BATCH_HANDLERS = {
    Job.Kind.SALE_PAID: payment.pay_batch,
}
