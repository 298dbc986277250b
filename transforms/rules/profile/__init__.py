"""The customer profile as a fold. Pure functions, no Beam.

`new_state(customer_id)` starts a profile; `apply(state, event)` folds one event into it, in any
order (`fold.py`, the cart in `cart.py`); `render(state, ...)` turns the state, the reference time, the CRM row, the
catalog and product popularity into the serving document (`customers/{customer_id}`,
docs/DATA_CONTRACT.md), or None when the customer must not be emailed (`render.py`);
`recommendations.py` ranks products. Batch folds a customer's grouped events, streaming folds
each as it comes: both run these functions, so a test of a rule is a test of both.

The state is plain dicts, lists, sets and Decimals (picklable, small): what `render` needs and
nothing more. Times are epoch microseconds.
"""
from transforms.rules.profile.cart import MAX_CART_OPS
from transforms.rules.profile.fold import (ADD_WEIGHT, EMAIL_CLICKED, EMAIL_OPENED,
                                           MAX_RECENTLY_VIEWED, ORDER_CANCELLED,
                                           ORDER_COMPLETED, ORDER_WEIGHT, PAGE, PRODUCT_ADDED,
                                           PRODUCT_REMOVED, PRODUCT_VIEWED, SCREEN, VIEW_WEIGHT,
                                           apply, event_name, fold, fold_input, new_state,
                                           upgraded)
from transforms.rules.profile.recommendations import (MAX_RECOMMENDATIONS, Recommender,
                                                      interacted_products)
from transforms.rules.profile.render import (MAX_TOP_CATEGORIES, SCHEMA_VERSION, Settings,
                                             cart_abandoned_from, money, product_fields, render,
                                             segment, suppressed, top_categories)

__all__ = [
    'ADD_WEIGHT', 'EMAIL_CLICKED', 'EMAIL_OPENED', 'MAX_CART_OPS', 'MAX_RECENTLY_VIEWED',
    'MAX_RECOMMENDATIONS', 'MAX_TOP_CATEGORIES', 'ORDER_CANCELLED', 'ORDER_COMPLETED',
    'ORDER_WEIGHT', 'PAGE', 'PRODUCT_ADDED', 'PRODUCT_REMOVED', 'PRODUCT_VIEWED',
    'SCHEMA_VERSION', 'SCREEN', 'VIEW_WEIGHT', 'Recommender', 'Settings', 'apply',
    'cart_abandoned_from', 'event_name', 'fold', 'fold_input', 'interacted_products', 'money',
    'new_state', 'product_fields', 'render', 'segment', 'suppressed', 'top_categories', 'upgraded']
