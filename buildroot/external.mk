include $(sort $(wildcard $(BR2_EXTERNAL_FLYNN_PATH)/package/*/*.mk))
