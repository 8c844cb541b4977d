/* The robot's feedback on the board: the onboard LED shows what it is doing (steady while
 * listening, blinking while thinking, heartbeat while speaking, off when idle) and a short
 * chime, generated here, says "I am listening". The LED is a sysfs LED class device
 * (/sys/class/leds/NAME: trigger and brightness) or a sysfs GPIO (/sys/class/gpio/gpioN:
 * value), under a sysfs root that tests point at a fake tree. */
#ifndef STORYTELLER_FEEDBACK_H
#define STORYTELLER_FEEDBACK_H

#include <stddef.h>
#include <stdint.h>

#include "../src/error.h"

typedef enum { FEEDBACK_IDLE, FEEDBACK_LISTENING, FEEDBACK_THINKING, FEEDBACK_SPEAKING } FeedbackState;

typedef struct {
    char dir[512]; /* the LED's sysfs directory; "" = no LED */
    int gpio;      /* a GPIO's value file (blinks by feedback_tick) instead of an LED class */
    int lit;       /* the GPIO's current level */
    FeedbackState state;
} Feedback;

/* led: "none" or "" (no LED), "gpioN" (sysfs GPIO N, exported and made an output if need
 * be) or an LED class name ("led-user"); root: the sysfs root ("/sys"). -1 with err when
 * the LED is not there or not writable. */
int feedback_open(Feedback *f, const char *root, const char *led, Error *err);
/* Shows the state; -1 with err when a sysfs write fails. No LED: nothing, 0. */
int feedback_set(Feedback *f, FeedbackState state, Error *err);
/* One token generated: a GPIO LED toggles while thinking (an LED class device blinks by
 * its timer trigger on its own). */
void feedback_tick(Feedback *f);
/* The listening chime: two short rising notes, faded in and out, at `rate` Hz; malloc'd,
 * *n samples; NULL when out of memory. */
int16_t *feedback_chime(int rate, size_t *n);

#endif
