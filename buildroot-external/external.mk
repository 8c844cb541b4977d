include $(sort $(wildcard $(BR2_EXTERNAL_DUO_STORYTELLER_PATH)/package/*/*.mk))
