from django.db import models


class Charge(models.Model):
    order_id = models.IntegerField()
    amount_cents = models.IntegerField()


class Visit(models.Model):
    page = models.CharField(max_length=100)


class Attempt(models.Model):
    task = models.CharField(max_length=100)
    key = models.CharField(max_length=100)


class Cleanup(models.Model):
    ran_at = models.DateTimeField(auto_now_add=True)
