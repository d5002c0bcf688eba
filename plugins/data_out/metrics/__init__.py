"""Message metrics in (Customer.io reporting webhooks, warehouse exports) and send tasks out."""
