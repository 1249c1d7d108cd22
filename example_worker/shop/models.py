from django.db import models


class Charge(models.Model):
    """The side effect that must happen once per order, whatever the broker does."""

    order_id = models.IntegerField()
    amount_cents = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)


class Receipt(models.Model):
    order_id = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)


class PartnerCall(models.Model):
    """One row per attempt to call a flaky partner API."""

    request_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
