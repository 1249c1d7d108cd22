from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "example_worker.shop"
    label = "shop"
